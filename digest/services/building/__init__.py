"""What goes into an issue: drafts grouped and rendered, the editors' edits and
approvals, and the editors themselves (accounts, sessions, the audit of their changes).
"""
