"""distill.realtime"""
