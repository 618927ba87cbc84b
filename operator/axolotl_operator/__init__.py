"""axolotl-operator: run Axolotl fine-tuning jobs on Kubernetes."""

__version__ = "0.1.0"
