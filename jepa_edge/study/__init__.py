"""Experiments and their reports: the paper's study, not what a robot runs.

``alignment``  the Social-JEPA alignment study on latents (numpy only) and its report.md
``plots``      its PNG figures (matplotlib)
``reproduce``  `jepa-edge reproduce`: trains the agents and controls, then runs ``alignment`` (torch)
``reproduce3d``  `jepa-edge reproduce --world 3d`: the same over the 3D world's view pairs (torch)
``visibility``  position transfer per visibility group of the two cameras (numpy only)
``student``    `jepa-edge reproduce --student`: students with/without a teacher (torch)
``scaling``    `jepa-edge reproduce --scaling`: alignment vs training compute, seeds, view pairs (torch)
``cca``        how much two latent spaces share: held-out canonical correlations (numpy only)
``graph_models``  `jepa-edge calib-graph`: the alignment graph of exported models (ONNX Runtime, no torch)
``graph_report``  its graph.md table and graph.png heatmaps

Nothing here is imported by ``runtime/`` or ``calib/``; this package imports nothing eagerly, so
``jepa_edge.study.alignment`` stays torch-free.
"""
