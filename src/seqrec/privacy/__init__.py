"""Privacy: DP-SGD with the user as the unit of privacy, pseudonymised user ids, forgetting users.

See docs/privacy.md for the threat model and what each piece guarantees.
"""
