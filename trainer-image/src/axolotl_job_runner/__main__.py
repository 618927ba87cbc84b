"""`python -m axolotl_job_runner` == `axolotl-job-runner`."""

from .runner import main

raise SystemExit(main())
