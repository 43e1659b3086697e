"""Plan review: the plan as reviewers see it and the node's desk of decisions (``desk``), the
director's review phase (``phase``), the preview of an initial state (``preview``), and the
admin's ways in: the console prompt, ``fx ... review`` and its local socket."""
