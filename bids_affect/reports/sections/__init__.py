"""The built-in report sections; importing this package registers them.

One module per analysis, each registering its section(s) with
:func:`bids_affect.reports.registry.register_section`; a new analysis adds a
module here (and its template under ``templates/sections/``) and one import
line below.

Examples
--------
>>> from bids_affect.reports.registry import sections_for
>>> [section.name for section in sections_for("subject")]
['summary', 'decoding', 'occlusion', 'rsa', 'encoding', 'imagevalidation', 'synthesis', 'methods']
"""

from bids_affect.reports.sections import (  # noqa: F401 (registers the sections)
    decoding,
    encoding,
    group,
    group_level,
    methods,
    occlusion,
    rsa,
    stimulus_models,
    summary,
)
