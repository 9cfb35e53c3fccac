"""The service desk (/desk): agents find a customer, see everything said, act on the phone, and work tickets
and follow-ups."""
