"""The method: front end, network, SpecAugment, sampler, clustering, metrics.

Pure torch / numpy / faiss. No Prefect and no file layout.
"""
