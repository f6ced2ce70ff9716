"""What a build is asked to do and the contract every target plugin implements (no torch).

``request`` (the model source, input shape, build request), ``options`` (target options, declared
once), ``tolerance`` (verification tolerances) and ``target`` (the plugin API: ``Target``,
``Session``, artifacts, memory and latency figures). Targets and the pipeline both stand on it.
"""
