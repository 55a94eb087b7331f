"""Snakemake's executor plugin ``ddmq`` (``snakemake --executor ddmq``).

Snakemake finds executor plugins by module name, ``snakemake_executor_plugin_<name>``;
the code is :mod:`ddmq_hpc.snakemake_executor`.
"""
from ddmq_hpc.snakemake_executor import Executor, ExecutorSettings, common_settings

__all__ = ["Executor", "ExecutorSettings", "common_settings"]
