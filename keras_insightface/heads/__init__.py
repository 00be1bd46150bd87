"""The heads of a model: the embedding head that ends a basic model, and the output head a training plan puts on it.

| module          | concern                                                                                   |
| --------------- | ----------------------------------------------------------------------------------------- |
| `embedding.py`  | embedding heads E / GDC / F / GAP: backbone feature map -> the `embedding` layer           |
| `base.py`       | `OutputHead`: the questions `Train` asks a head; `HeadRequest` (a plan), `HeadOptions` (a run) |
| `registry.py`   | the kinds, which one a plan gets, their refusals, the head of a loaded model              |
| `identity.py`   | no class head: center / triplet plans train the embedding                                 |
| `softmax.py`    | softmax `Dense`                                                                           |
| `cosine.py`     | `NormDense` (sub-centers, feature norm): margin-loss plans                                |
| `vpl.py`        | `NormDenseVPL`: variational prototype learning                                            |
| `partial_fc.py` | `NormDensePartialFC`: Partial FC, sampled classes                                         |
| `sharded.py`    | `ShardedHeadModel`: class centers sharded across replicas                                 |
| `row_updates.py`| the one rule table of optimizer steps on a subset of class rows (Partial FC, shards)       |

Importing the package registers every kind.

Usage:
    from keras_insightface import heads
    head = heads.plan_head(heads.HeadRequest("arcface", 85742), heads.HeadOptions(), current=None, embedding_shape=(None, 512))
"""
from . import cosine, identity, partial_fc, sharded, softmax, vpl  # noqa: F401  (each registers its kind)
from .base import HeadOptions, HeadRequest, OutputHead  # noqa: F401
from .cosine import NormDense  # noqa: F401
from .embedding import EMBEDDING_HEADS, add_embedding_head  # noqa: F401
from .registry import check_run_options, head_of_model, plan_head, refusal_table  # noqa: F401
