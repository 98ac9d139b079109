"""adaptor_peft: parameter-efficient adaptation (Mamba-Adaptor) for visual state space models."""

__version__ = "0.1.0"
