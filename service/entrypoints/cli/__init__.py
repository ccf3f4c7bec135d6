"""The command lines: ``service`` (``python -m service``: the API, ``migrate``, ``token``,
``doctor``, ``ops``, and the client's ``image`` and ``operation``) and ``workers``
(``python -m workers``), with what they share: the settings in ``--help`` (``helptext``),
one-line failures (``failures``), the listen check (``listen``) and output (``output``)."""
