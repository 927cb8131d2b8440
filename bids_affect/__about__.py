"""Version and citation metadata of bids_affect."""

__version__ = "0.1.0"
__code_url__ = "https://github.com/bids-affect/bids_affect"
__citation__ = """\
bids_affect {version} ({code_url}): emotion decoding, interpretation and encoding
models of naturalistic fMRI, a BIDS-App."""
