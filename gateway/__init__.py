"""aleacc-gateway: a signing reverse proxy for the Aleacc Web API."""
