"""The demo: a synthetic DataComp-style pool (:mod:`.synth`), scored and selected end to end (:mod:`.job`)."""
