"""Finding the signing scheme when Aleacc's documentation does not say it.

``samples`` parses requests another signer made (curl, HAR, raw HTTP); ``learn``
searches the scheme space offline for the schemes that reproduce them; ``candidates``
lists the likely schemes, best first; ``probe`` tries them against the upstream.
"""
