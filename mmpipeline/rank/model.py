"""The MLflow pyfunc wrapper of the registered ranker (``mmpipeline.rank.model.RankerPyfunc``).

The fusion models themselves live in :mod:`mmpipeline.rank.fusion` (one module per fusion kind).
This module keeps its name and the wrapper's class name: registered model versions are pickled
references to ``mmpipeline.rank.model.RankerPyfunc`` and must keep loading.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from mmpipeline.rank.fusion import FusionRanker, load_ranker_file
from mmpipeline.retrieval.features import frame_to_arrays


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


try:  # the pyfunc wrapper needs mlflow; the model itself does not
    import mlflow.pyfunc

    class RankerPyfunc(mlflow.pyfunc.PythonModel):
        """``predict(features_df) -> scores`` (one float per row) for the registered model."""

        def __init__(self, batch_size: int = 8192):
            self.batch_size = batch_size
            self.model: FusionRanker | None = None

        def load_context(self, context) -> None:
            self.device = resolve_device("auto")
            self.model = load_ranker_file(context.artifacts["model"], map_location=self.device).to(self.device)

        def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
            import pandas as pd

            df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            if len(df) == 0:
                return np.zeros(0, dtype=np.float64)
            return self.model.score_arrays(frame_to_arrays(df), self.batch_size, self.device)

        def describe(self) -> str:
            return json.dumps(asdict(self.model.cfg)) if self.model else "{}"
except ImportError:  # pragma: no cover
    RankerPyfunc = None  # type: ignore[assignment,misc]
