"""The ``apcv-verify`` command (:func:`.main.main`): ``serve`` (one process, or several workers
supervised by :mod:`.workers`), ``config --print`` (:mod:`.config_print`), ``issue``
(:mod:`.issue`), ``demo`` (:mod:`.demo`), ``scan`` (:mod:`.scan`) and ``corpus``
(:mod:`.corpus`)."""
