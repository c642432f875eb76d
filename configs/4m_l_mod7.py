"""4M-L on the 4M-7 modalities, the reference recipe (500B tokens, batch 8192).

    python launch/slurm.py --nodes 8 --gpus-per-node 8 -- fourm train \
        --config configs/4m_l_mod7.py --workdir /shared/runs/4m_l_mod7 \
        --config.data.paths="('/data/cc12m', '/data/cc12m_tokens')"

See fourm.train.config.mod7_pretraining for every number and where it comes from.
"""

from fourm.train.config import mod7_pretraining


def get_config():
  return mod7_pretraining("large")
