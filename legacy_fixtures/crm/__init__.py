"""A SOAP CustomerService in the style of a 2000s enterprise app (see server.py)."""
