"""Ray Train jobs and offline (off-policy) evaluation.

* :mod:`training.data`: reward records from an archive (``onramp archive``), read with Ray Data.
* :mod:`training.train`: the ``TorchTrainer`` job (``onramp train``, ``python -m training.train``)
  that trains the decision model, evaluates it every epoch and registers it in the model registry;
  :mod:`training.trainer` runs it from the driver, :mod:`training.loop` is the workers' loop and
  :mod:`training.console` routes Ray's output (Onramp's lines and bars shown, Ray's to a log).
* :mod:`training.metrics`: the job's per-epoch metrics (AUC, precision, recall, IPS / SNIPS).
* :mod:`training.replay`: feature parity, archived events replayed through the stream's state
  code against the features the decisions logged.
* :mod:`training.ope`, :mod:`training.evaluate`, :mod:`training.obd`: off-policy evaluation
  (``onramp evaluate``) and the Open Bandit Dataset.
"""
