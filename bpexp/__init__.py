"""bpexp: a learning-rate experiment tracker for backpropagation.

The numpy core (config, data, model, optim, schedules, train) imports nothing
heavier than numpy, so ``import bpexp`` stays light; MLflow and Optuna are imported
only by the modules that need them.
"""

from bpexp.errors import BpexpError, ConfigError, DataError, ServiceError, TrainingError

__version__ = "0.1.0"

__all__ = [
    "BpexpError",
    "ConfigError",
    "DataError",
    "ServiceError",
    "TrainingError",
    "__version__",
]
