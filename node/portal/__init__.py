"""The node's web pages (``/app``): the doctor's app (panel, journey, trends, care plan, live
alert inbox, referrals, remote follow-up) and the patient's app (today's plan, trends). Built on
``servicekit.web``; every page authorises through ``node.auth.deps`` (the API's one access
seam) and acts through the same functions as the API routes."""
