"""One process of tests/test_prepared_shards.py's runs over prepared data.

  python tests/prepared_shards_worker.py PREPARED OUT NUM_SHARDS \
      [COORDINATOR NUM_PROCESSES PROCESS_ID]

Builds stage 2's train batches and held-out eval from the prepared
directory, as the trainer does, and writes to OUT (.npz + .json): the
shard files this process opened, its first batches (its rows of the global
batch), the held-out eval's data and its metrics for a fixed embedding.
"""

import json
import os
import sys


def main(argv):
  prepared, out, num_shards = argv[:3]
  import jax  # pylint: disable=g-import-not-at-top
  if len(argv) > 3:
    coordinator, num_processes, process_id = argv[3:6]
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(num_processes),
                               process_id=int(process_id))
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from dashclip_jax.train import sharding
  from dashclip_jax.data import prepared as prepared_lib
  import test_prepared_shards as t
  # pylint: enable=g-import-not-at-top

  opened = t.spy_on_shard_files(prepared_lib)
  cfg = t.data_config(prepared, int(num_shards))
  features, ok = t.product_table(prepared)
  batches = t.train_batches(cfg)
  data = t.eval_inputs.stage2_eval(cfg, t.model_config(), t.EVAL_BATCH)
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 1), ("tensor", 1)])
  metrics = t.heldout_metrics(data, features, ok, mesh)

  arrays = {f"batch{k}/{key}": v for k, b in enumerate(batches)
            for key, v in b.items()}
  arrays.update({"eval/product_rows": data.product_rows,
                 "eval/indptr": data.labels.indptr,
                 "eval/product": data.labels.product,
                 "eval/label": data.labels.label})
  np.savez(out + ".npz", **arrays)
  with open(out + ".json", "w") as f:
    json.dump({"opened": opened, "query_ids": data.query_ids,
               "metrics": metrics}, f)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  main(sys.argv[1:])
