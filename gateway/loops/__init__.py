"""The gateway's background loops, one module each. Routes only answer HTTP;
work that goes on after an answer, or on a timer, lives here and is started
and stopped by the app's lifespan (`gateway/app.py`)."""
