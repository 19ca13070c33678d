"""Exact extraction: the polyhedral complex, the level-set surface and surface tracking.

Edge subdivision (Berzins, ICML 2023) in small modules, in pipeline order:

- ``guards``: boxes, dtypes, TF32 off, boxes too large for the network's detail;
- ``bits``: bit sets of constraint ids and row hashing (sign vectors, face keys);
- ``memory``, ``progress``: chunk sizes and the memory guard; progress bars and log lines;
- ``evaluate``: chunked pre-activations of a :class:`nsr.pl.PLGraph` at vertices;
- ``tolerances``: per-neuron sign tolerances near zero;
- ``skeleton``: the 1-skeleton of tiles and the edge split kernel;
- ``pruning``: tiles and regions the level set cannot reach (exact ranges, then bounds);
- ``subdivide``: the driver (encoder planes, neurons, the level set);
- ``complex``: :class:`PolyhedralComplex`, :class:`LevelSet`, :func:`extract_complex`;
- ``cells``: cells of every dimension from the faces' sign vectors;
- ``surface``: exact level-set meshes (:func:`extract_mesh`) in complex, surface and track mode;
- ``tracking``: the level set grown polygon by polygon from seeds.

Every stage reads one network form, :class:`nsr.pl.PLGraph`, and numbers constraints with
:class:`nsr.pl.layout.ConstraintLayout`.
"""
