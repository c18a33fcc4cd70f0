"""Evaluation of a world 4M model against the world's ground truth, each metric beside its tokenizer ceiling.

- :mod:`~open4m.evaluation.metrics`: depth, normals, semseg, box mAP (pure numpy);
- :mod:`~open4m.evaluation.captions`: world captions → facts, and their accuracy against a scene;
- :mod:`~open4m.evaluation.tasks`: the tasks, their metrics and what each needs from the model;
- :mod:`~open4m.evaluation.run`: :func:`evaluate_model`;
- :mod:`~open4m.evaluation.report`: :func:`write_report`, :func:`format_table`, :func:`not_better_than`.
"""

from open4m.evaluation.report import format_table, load_results, not_better_than, write_report
from open4m.evaluation.run import evaluate_model
from open4m.evaluation.tasks import TASKS

__all__ = ["TASKS", "evaluate_model", "format_table", "load_results", "not_better_than", "write_report"]
