"""Jobs that run a checkpoint over data: `datasets` maps, HDF5 files (`hf-elmo embed`, token dumps).

`core` holds what every job shares: loading a model, choosing and pooling representations, the fingerprint.
"""
