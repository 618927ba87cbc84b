"""axolotl-job-runner: the container command of AxolotlJob training pods.

Importing this package stays light (stdlib + PyYAML); Axolotl is only imported by the
validator and plugin modules, which run inside the child processes.
"""

__version__ = "0.1.0"
