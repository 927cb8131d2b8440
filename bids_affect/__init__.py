"""bids_affect: emotion decoding, interpretation and encoding models of naturalistic fMRI.

A BIDS-App (``bids_affect bids_dir output_dir participant|group``) and a library
usable on its own: ``from bids_affect.decoding import ...``.
"""

from bids_affect.__about__ import __version__

__all__ = ["__version__"]
