"""The served model, for MLflow's models-from-code logging (``serving.log_model``): MLflow stores this file with
the model and runs it on load; it names the model object, so nothing is pickled."""

import mlflow

from digits.serving import DigitsModel

mlflow.models.set_model(DigitsModel())
