"""bot4: a trading kernel whose risk policy lives in files a person can edit."""
