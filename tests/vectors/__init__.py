"""Pinned format vectors and the script that generates them."""
