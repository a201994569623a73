##! seqwatch: per-host interval features for a recurrent anomaly model, and its
##! verdicts as notices. Load with ``@load seqwatch`` after installing with zkg.
##! The NetControl integration (netcontrol.zeek) is opt-in:
##! ``@load seqwatch/netcontrol``.

@load ./main
@load ./websocket
