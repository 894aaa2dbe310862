"""Site bootstrap: secrets, GitLab tokens, bots and runner registration.

Not built yet; see deploy/README.md at the repository root for what belongs here.
"""
