"""Alignment study of agent A (target) and agent B (source) run dirs, on the reproduce moments; prints key numbers.

usage: python docs/experiments/pair_study.py A_RUN B_RUN OUT_DIR [C_RUN]   (C: a different-world control agent)
"""
import json
import sys
from pathlib import Path

import numpy as np

from jepa_edge.agents.latents import agent_descriptor, latents_of, untrained_like, world_moments
from jepa_edge.study.alignment import StudyConfig, StudyInputs, run_study, write_report
from jepa_edge.study.reproduce import ReproduceConfig
from jepa_edge.train.checkpoint import load_agent
from jepa_edge.world.sim import WorldConfig

a_run, b_run, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
c_run = Path(sys.argv[4]) if len(sys.argv) > 4 else None  # different-world control agent, fed B's frames
rc = ReproduceConfig()
(enc_a, meta_a), (enc_b, meta_b) = load_agent(a_run), load_agent(b_run)
va, vb = meta_a["view"], meta_b["view"]
m = world_moments([va, vb], rc.anchor_episodes, rc.anchor_steps, 32, rc.anchor_seed, WorldConfig())
fa, fb = m.frames[va], m.frames[vb]
inputs = StudyInputs(target=latents_of(enc_a, fa), source=latents_of(enc_b, fb), positions=m.positions, danger=m.danger,
                     episode=m.episode, step=np.tile(np.arange(rc.anchor_steps), rc.anchor_episodes),
                     target_agent=agent_descriptor(meta_a), source_agent=agent_descriptor(meta_b),
                     target_untrained=latents_of(untrained_like(meta_a, 10_001), fa),
                     source_untrained=latents_of(untrained_like(meta_b, 10_002), fb),
                     other_world=latents_of(load_agent(c_run)[0], fb) if c_run else None)
r = run_study(inputs, StudyConfig())
write_report(r, out)
row = r["estimators"]["ridge"]
t = row["trained"]
print("agents R2", meta_a["metrics"]["position_r2"], meta_b["metrics"]["position_r2"])
print("W R2 %.3f retrieval %.3f (untrained %.3f, shuffled %.4f) CKA %.3f (untrained %.3f) mknn %.3f" % (
    t["r2"], t["retrieval_top1"], row["untrained"]["retrieval_top1"], row["shuffled"]["retrieval_top1"]["mean"],
    r["similarity"]["trained"]["cka"], r["similarity"]["untrained"]["cka"], r["similarity"]["trained"]["mutual_knn"]))
print("position kept %.2f transferred %.3f native %.3f | danger kept %.2f transferred %.3f native %.3f home %.3f" % (
    t["probes"]["position"]["kept"], t["probes"]["position"]["transferred"], t["probes"]["position"]["native_on_source"],
    t["probes"]["danger"]["kept"], t["probes"]["danger"]["transferred"], t["probes"]["danger"]["native_on_source"],
    t["probes"]["danger"]["home_on_target"]))
print("shared", r["shared"]["trained"]["n_above"], "split", json.dumps(r["shared"]["w_split"]["by_threshold"]))
if c_run:
    ow = row.get("other_world", {})
    print("other world: retrieval %.3f CKA %.3f position transferred %.3f" % (
        ow["retrieval_top1"], r["similarity"]["other_world"]["cka"], ow["probes"]["position"]["transferred"]))
print("shift", {d: round(e["shifted"]["retrieval_top1"], 4) for d, e in r["time_shift"].items()})
