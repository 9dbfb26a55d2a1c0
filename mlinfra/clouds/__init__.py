"""Clouds: facts and rules shared by every target on that cloud."""
