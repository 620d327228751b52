"""`ipjms demo`: a whole regional network on loopback, and the story told over it."""
