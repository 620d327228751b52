"""The patient's side of a node (the ``PATIENT`` feature): the region's patient sign-in
mapped to the local Patient, and the patient's own routes (node/patient/README.md)."""
