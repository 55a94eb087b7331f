#!/usr/bin/env python3
"""ddmq-dispatch handler: submit one batch job per request with sbatch.

A request is a JSON object on stdin, for example::

    {"command": "python train.py --epochs 3", "job_name": "train",
     "options": {"time": "00:30:00", "mem": "4G", "partition": "debug"},
     "workdir": "/scratch/me/run1"}

Only ``command`` is required. It becomes ``sbatch --wrap COMMAND``: the
command runs in the batch job, under the job's shell, so whoever can publish
to the request queue can run jobs as the user owning this crontab (the
queue directory's permissions are the access control). sbatch itself is run
without a shell, and every option is one ``--name=value`` argument, so a
request cannot add arguments of its own to the sbatch command line.

With DRY_RUN=1 it prints the sbatch command it would run instead of running
it, and only then: a handler that cannot find sbatch (cron's PATH is
/usr/bin:/bin, and many sites install SLURM elsewhere) must not report
success, or every request would be acked and none submitted. Exit status: 0
submitted (the job id is printed), 2 the request is malformed, 127 sbatch is
not in PATH, 126 it cannot be run, otherwise sbatch's own status. Every
failure is one line on stderr, which cron mails, and makes ddmq-dispatch
requeue the request for a later run (a slurmctld outage, a PATH to fix).
Standard library only, Python 3.6+, so the system python3 cron finds will do.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

OPTION_NAME = re.compile(r"[a-z][a-z0-9-]*\Z")


def fail(text, status=2):
    print("submit_handler: " + text, file=sys.stderr)
    sys.exit(status)


def sbatch_command(request):
    """The sbatch argument list for one request; exits with status 2 if it is malformed."""
    if not isinstance(request, dict):
        fail("the request must be a JSON object")
    command = request.get("command")
    if not isinstance(command, str) or not command.strip():
        fail("the request needs a non-empty string 'command'")
    message_id = os.environ.get("DDMQ_MESSAGE_ID", "request")
    job_name = request.get("job_name", "ddmq-" + message_id[:8])
    argv = ["sbatch", "--parsable", "--job-name=" + str(job_name)]
    if "workdir" in request:
        argv.append("--chdir=" + str(request["workdir"]))
    options = request.get("options", {})
    if not isinstance(options, dict):
        fail("'options' must be a JSON object of sbatch long options")
    for name, value in sorted(options.items()):
        if not OPTION_NAME.match(name) or name in ("wrap", "parsable"):
            fail("not an sbatch option this handler accepts: %r" % name)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            fail("option %r needs a string or number value" % name)
        argv.append("--%s=%s" % (name, value))
    argv += ["--wrap", command]
    return argv


def main():
    try:
        request = json.loads(sys.stdin.read())
    except ValueError as exc:
        fail("the request is not JSON: %s" % exc)
    argv = sbatch_command(request)
    if os.environ.get("DRY_RUN") == "1":
        print("would run: " + " ".join(shlex.quote(arg) for arg in argv))
        return 0
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        fail("sbatch not found in PATH (%s): set PATH in the crontab to include SLURM's bin directory"
             % os.environ.get("PATH", ""), 127)
    try:
        done = subprocess.run([sbatch] + argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)
    except OSError as exc:
        fail("cannot run %s: %s" % (sbatch, exc.strerror or exc), 126)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
