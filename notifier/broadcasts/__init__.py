"""broadcasts"""
