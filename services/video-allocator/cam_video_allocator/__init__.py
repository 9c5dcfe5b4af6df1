"""Video-room allocator: places conferences on the SFUs listed in cam.videoDomains."""
