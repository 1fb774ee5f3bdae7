"""Sampling programs from a model.

SamplingParams, the Sampler protocol, backends and the generate stage.
"""
