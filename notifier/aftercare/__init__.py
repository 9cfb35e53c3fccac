"""aftercare"""
