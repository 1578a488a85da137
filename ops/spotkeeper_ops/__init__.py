"""spotkeeper's operator commands (``spotkeeper preflight|status|keys``). Never shipped to Lambda: they run on an
operator's machine with the operator's credentials, next to ``sam deploy``."""
