"""The decisions: what spotkeeper does for each event. AWS and TGI are reached only through adapters."""
