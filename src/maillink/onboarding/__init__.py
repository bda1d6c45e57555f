"""OAuth onboarding: connect a mailbox once, keep its refresh token, read its address."""
