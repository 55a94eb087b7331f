"""ddmq for batch jobs: signalling between jobs, workflows and cron on a cluster."""
