"""Serving layer: recommendations from a checkpoint (`Recommender`, `rodpo recommend`) and a
self-contained export (`rodpo export`) that needs only torch and safetensors."""

from rodpo_dist.serve.export import export, export_checkpoint
from rodpo_dist.serve.ids import ItemIds
from rodpo_dist.serve.jsonl import recommend_file
from rodpo_dist.serve.recommender import Recommendation, Recommender, RequestError

__all__ = ["ItemIds", "Recommendation", "Recommender", "RequestError", "export", "export_checkpoint",
           "recommend_file"]
