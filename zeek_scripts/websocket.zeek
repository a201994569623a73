##! Optionally make this Zeek listen for WebSocket clients such as the seqwatch
##! sidecar (JSON v1 at ws://ADDRESS:PORT/v1/messages/json).
##!
##! Off by default, because the listener usually exists already: zeekctl >= 8.1
##! managers listen on 127.0.0.1:27759 (``UseWebSocket``), and a standalone
##! Zeek 8.x gets a listener plus the cluster backend it needs from
##! ``@load policy/frameworks/cluster/websocket/server``. Turn it on for a
##! standalone Zeek 7.x, or to listen elsewhere.
##!
##! Zeek >= 8.1 listens with :zeek:see:`Cluster::listen_websocket`, which needs
##! a cluster backend (without one, clients connect but never get an ack).
##! Zeek 7.2 to 8.0 use it with a non-Broker backend and
##! ``Broker::listen_websocket`` with Broker; 7.0 uses ``Broker::listen_websocket``.

@load base/misc/version
@load base/frameworks/cluster
@load ./main

module SeqWatch;

export {
	## Whether this script starts a WebSocket listener (on the manager in a
	## cluster, or on a standalone Zeek).
	const listen_websocket = F &redef;

	## Address the listener binds to. Keep it on loopback unless the
	## sidecar runs elsewhere, and then prefer TLS.
	const websocket_address = 127.0.0.1 &redef;

	## Port the listener binds to (Zeek's default WebSocket port).
	const websocket_port = 27759/tcp &redef;
}

function listener_wanted(): bool
	{
	if ( ! listen_websocket )
		return F;
	# Like zeekctl: in a cluster only the manager listens.
	return ! Cluster::is_enabled()
	    || Cluster::local_node_type() == Cluster::MANAGER;
	}

function listen_failed()
	{
	Reporter::error(fmt("SeqWatch: cannot listen for WebSocket clients on %s:%s",
	    websocket_address, websocket_port));
	}

@if ( Version::number >= 80100 )
event zeek_init() &priority=-10
	{
	if ( ! listener_wanted() )
		return;
	if ( Cluster::backend == Cluster::CLUSTER_BACKEND_NONE )
		Reporter::warning("SeqWatch: listening for WebSocket clients without a cluster backend; they will never get an ack. @load policy/frameworks/cluster/websocket/server or a backend.");
	if ( ! Cluster::listen_websocket([$listen_addr=websocket_address,
	    $listen_port=websocket_port]) )
		listen_failed();
	}
@else
@if ( Version::number >= 70200 )
event zeek_init() &priority=-10
	{
	if ( ! listener_wanted() )
		return;
	# Broker's own listener serves the Broker backend; others need the
	# cluster one.
	if ( Cluster::backend != Cluster::CLUSTER_BACKEND_BROKER )
		{
		if ( ! Cluster::listen_websocket([$listen_addr=websocket_address,
		    $listen_port=websocket_port]) )
			listen_failed();
		}
	else if ( Broker::listen_websocket(cat(websocket_address), websocket_port) ==
	    0/unknown )
		listen_failed();
	}
@else
event zeek_init() &priority=-10
	{
	if ( ! listener_wanted() )
		return;
	if ( Broker::listen_websocket(cat(websocket_address), websocket_port) ==
	    0/unknown )
		listen_failed();
	}
@endif
@endif
