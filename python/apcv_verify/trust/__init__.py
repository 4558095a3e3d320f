"""The trust material: anchors (:mod:`.anchors`), the verified trust list and status lists
and the snapshot a call verifies with (:mod:`.material`), their sources and background
refresh (:mod:`.sources`), and all their metrics (:mod:`.metrics`)."""
