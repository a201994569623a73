##! Per-host, per-interval connection features for the seqwatch anomaly detector,
##! exported over Zeek's WebSocket API, and seqwatch's verdicts raised as notices.
##!
##! Every removed connection counts for its originator's outbound and its
##! responder's inbound features (schema seqwatch.features.v1, 16 values per
##! host). A connection belongs to the interval of its *estimated* removal time,
##! computed from the connection record alone (start, duration, state, protocol,
##! service, responder port) exactly as seqwatch's Python featurizer computes it
##! from conn.log, so that live features equal offline ones. Interval b is
##! published once network time passes (b+1) * interval_width + slack, as one
##! :zeek:see:`SeqWatch::interval_features` event per :zeek:see:`SeqWatch::hosts_per_message`
##! hosts. A connection whose interval already went out (Zeek removed it later
##! than estimated) is added to the oldest interval still open and counted in
##! that interval's ``late`` field.
##!
##! The sidecar answers with :zeek:see:`SeqWatch::verdict` events, which become
##! :zeek:see:`SeqWatch::Traffic_Anomaly` notices.

@load base/misc/version
@load base/frameworks/cluster
@load base/frameworks/notice
@load base/protocols/conn
@load base/utils/directions-and-hosts
@load base/utils/site

module SeqWatch;

export {
	## The feature log stream (seqwatch_features.log).
	redef enum Log::ID += { LOG };

	## A default logging policy hook for the stream.
	global log_policy: Log::PolicyHook;

	redef enum Notice::Type += {
		## A host's traffic in one interval deviated from what seqwatch's
		## model predicted from the host's recent intervals. ``$sub`` names
		## the features that deviated most (in standard deviations), ``$n``
		## is the model's error times 100, rounded.
		Traffic_Anomaly,
	};

	## Feature schema these scripts implement; the sidecar's model must
	## have been trained on the same schema.
	const schema_id = "seqwatch.features.v1";

	## Width of an interval. Intervals are aligned to multiples of it
	## since the epoch. Must equal the width the sidecar's model expects.
	const interval_width = 60sec &redef;

	## Distinct counts (out_hosts, out_ports, in_hosts) stop growing at this
	## many elements; must equal the model's distinct cap.
	const distinct_cap = 1024 &redef;

	## Estimated removal delay of an unanswered TCP SYN (state S0), from
	## its first packet. Mirrors :zeek:see:`tcp_attempt_delay`.
	const tcp_attempt_delay = 5sec &redef;

	## Estimated removal delay of a closed or reset TCP connection after
	## its last packet. Mirrors :zeek:see:`tcp_close_delay` and
	## :zeek:see:`tcp_reset_delay`.
	const tcp_close_delay = 5sec &redef;

	## Estimated removal delay of a TCP connection that never closed.
	## Mirrors :zeek:see:`tcp_inactivity_timeout`.
	const tcp_inactivity_delay = 5min &redef;

	## Estimated removal delay of a never-closed TCP connection of an
	## interactive service (:zeek:see:`SeqWatch::long_timeout_services`) or
	## port (:zeek:see:`SeqWatch::long_timeout_ports`). Mirrors
	## :zeek:see:`Conn::analyzer_inactivity_timeouts` and
	## :zeek:see:`Conn::port_inactivity_timeouts`.
	const long_inactivity_delay = 1hr &redef;

	## Estimated removal delay of a UDP connection whose service includes
	## dns. Mirrors :zeek:see:`dns_session_timeout`.
	const dns_delay = 10sec &redef;

	## Estimated removal delay of other UDP connections. Mirrors
	## :zeek:see:`udp_inactivity_timeout`.
	const udp_inactivity_delay = 1min &redef;

	## Estimated removal delay of ICMP and other connections. Mirrors
	## :zeek:see:`icmp_inactivity_timeout`.
	const icmp_inactivity_delay = 1min &redef;

	## Services (lower case, as in conn.log) that get the long inactivity
	## delay when their TCP connection never closed.
	const long_timeout_services: set[string] = {
		"ssh",
		"ftp",
		"ftp-data",
		"telnet",
		"rlogin"
	} &redef;

	## Responder ports that get the long inactivity delay.
	const long_timeout_ports: set[port] = {
		21/tcp,
		22/tcp,
		23/tcp,
		513/tcp
	} &redef;

	## How long after an interval's end its features are published, so
	## that connections Zeek removes a little after their estimate still
	## make it.
	option slack = 5sec;

	## How often open intervals are checked for publication.
	const check_interval = 1sec &redef;

	## Hosts that get feature vectors: ALL_HOSTS, or LOCAL_HOSTS to keep
	## only :zeek:see:`Site::local_nets`. A connection still counts for the
	## other side's features when one side is not tracked.
	option track_hosts: Host = ALL_HOSTS;

	## At most this many hosts get feature vectors per interval and node;
	## further hosts are counted in the ``overflow`` field (an estimate,
	## HyperLogLog) and reported with a warning, so that a flood of spoofed
	## sources cannot exhaust memory.
	option max_hosts_per_interval = 50000;

	## At most this many hosts go into one
	## :zeek:see:`SeqWatch::interval_features` event (about 0.8 KB each).
	option hosts_per_message = 256;

	## Name of this node in feature messages; empty means
	## :zeek:see:`Cluster::node`, or the host name outside a cluster.
	option node_name = "";

	## Whether features are published to :zeek:see:`SeqWatch::features_topic`.
	option export_features = T;

	## Whether every exported host vector is also written to
	## seqwatch_features.log.
	option log_features = F;

	## Topic the feature events are published to.
	const features_topic = "/seqwatch/features" &redef;

	## Topic the sidecar publishes verdicts to; the manager (or a
	## standalone Zeek) subscribes to it.
	const verdicts_topic = "/seqwatch/verdicts" &redef;

	## Suppression interval of :zeek:see:`SeqWatch::Traffic_Anomaly`
	## notices per host.
	option notice_suppression = 1hr;

	## One row of seqwatch_features.log: one host in one interval.
	type Info: record {
		## Start of the interval.
		start: time &log;
		## Width of the interval.
		width: interval &log;
		## The host.
		host: addr &log;
		## Connections the host originated.
		out_conns: count &log;
		## Distinct responders of those (capped).
		out_hosts: count &log;
		## Distinct responder ports/protocols of those (capped).
		out_ports: count &log;
		## IP bytes the host sent in them.
		out_bytes: count &log;
		## IP bytes the responders sent back.
		out_resp_bytes: count &log;
		## Packets the host sent in them.
		out_pkts: count &log;
		## Packets the responders sent back.
		out_resp_pkts: count &log;
		## Summed duration of those connections, in seconds.
		out_duration: double &log;
		## Those in state S0, REJ, RSTOS0, RSTRH, SH or SHR.
		out_failed: count &log;
		## Those in state REJ.
		out_rejected: count &log;
		## Those over UDP.
		out_udp: count &log;
		## Those over ICMP.
		out_icmp: count &log;
		## Connections the host responded to.
		in_conns: count &log;
		## Distinct originators of those (capped).
		in_hosts: count &log;
		## IP bytes the originators sent in them.
		in_bytes: count &log;
		## Those in a failed state.
		in_failed: count &log;
		## Connections added to this interval after their own had gone out.
		late: count &log;
		## The node that computed the row.
		node: string &log;
	};

	## A verdict from the sidecar: one host whose interval looked anomalous.
	## Travels as a positional vector of these fields.
	type Verdict: record {
		## The anomalous host.
		host: addr;
		## Start of the interval.
		start: time;
		## Width of the interval.
		width: interval;
		## The model's error for the host's interval.
		error: double;
		## The model's threshold; verdicts come when error exceeds it.
		threshold: double;
		## Which model produced the verdict.
		model_id: string;
		## Features with the largest standardized residuals.
		top_features: vector of string;
		## Their residuals, in standard deviations (signed).
		top_residuals: vector of double;
	};

	## Published per interval and node, in chunks of at most
	## :zeek:see:`SeqWatch::hosts_per_message` hosts.
	##
	## node: the node that aggregated the connections.
	## start: start of the interval.
	## width: :zeek:see:`SeqWatch::interval_width`.
	## schema: :zeek:see:`SeqWatch::schema_id`.
	## chunk: index of this message within the interval, from 0.
	## chunks: number of messages of this interval.
	## late: connections added to this interval because their own had
	##       already been published.
	## overflow: hosts beyond :zeek:see:`SeqWatch::max_hosts_per_interval`,
	##           counted but not exported.
	## hosts: the hosts of this chunk.
	## values: one vector of 16 features per host, in schema order.
	global interval_features: event(node: string, start: time, width: interval,
	    schema: string, chunk: count, chunks: count, late: count,
	    overflow: count, hosts: vector of addr, values: vector of vector of
	    double);

	## Sent by the sidecar for each anomalous host; raises a
	## :zeek:see:`SeqWatch::Traffic_Anomaly` notice.
	global verdict: event(v: Verdict);

	## Estimated time at which Zeek removes a connection, as seqwatch's
	## featurizer computes it from conn.log.
	global removal_estimate: function(c: connection): time;

	## The text of a verdict's ``$sub``: ``out_ports +8.1σ, out_failed +6.0σ``.
	global explain: function(v: Verdict): string;

	## Why a verdict cannot become a notice, or "" when it can.
	global verdict_problem: function(v: Verdict): string;

	## Publishes every open interval now, in order. :zeek:see:`zeek_done`
	## calls it; call it yourself before a planned shutdown. Connections
	## estimated in a flushed interval later count as late.
	global flush: function();
}

# Per-host aggregates of one interval.
type HostAgg: record {
	out_conns: count &default=0;
	out_hosts: set[addr] &default=set();
	out_ports: set[port] &default=set();
	out_bytes: count &default=0;
	out_resp_bytes: count &default=0;
	out_pkts: count &default=0;
	out_resp_pkts: count &default=0;
	out_duration: double &default=0.0;
	out_failed: count &default=0;
	out_rejected: count &default=0;
	out_udp: count &default=0;
	out_icmp: count &default=0;
	in_conns: count &default=0;
	in_hosts: set[addr] &default=set();
	in_bytes: count &default=0;
	in_failed: count &default=0;
};

# One open interval.
type Bin: record {
	hosts: table[addr] of HostAgg &default=table();
	late: count &default=0;
	# Hosts refused because of max_hosts_per_interval (bounded memory).
	overflow: opaque of cardinality &optional;
};

const failed_states: set[string] = {
	"S0",
	"REJ",
	"RSTOS0",
	"RSTRH",
	"SH",
	"SHR"
};
const closed_states: set[string] = {
	"SF",
	"REJ",
	"RSTO",
	"RSTR",
	"RSTOS0",
	"RSTRH",
	"SH",
	"SHR"
};

# Open intervals by index (start / interval_width).
global bins: table[count] of Bin;

# Intervals below this index have been published (or were due with nothing in
# them): a connection estimated there is late.
global first_open_bin: count = 0;

# Whether the periodic check runs (it starts with the first connection, so
# that it follows network time from a pcap, too).
global checking = F;

global check_bins: event(due: time);

function node_label(): string
	{
	if ( node_name != "" )
		return node_name;
	if ( Cluster::node != "" )
		return Cluster::node;
	return gethostname();
	}

function bin_index(t: time): count
	{
	local secs = time_to_double(t);
	if ( secs <= 0.0 )
		return 0;
	return double_to_count(floor(secs / interval_to_double(interval_width)));
	}

function long_timeout(c: connection): bool
	{
	if ( c$id$resp_p in long_timeout_ports )
		return T;
	for ( s in c$service )
		{
		if ( to_lower(s) in long_timeout_services )
			return T;
		}
	return F;
	}

function has_dns(c: connection): bool
	{
	for ( s in c$service )
		{
		if ( to_lower(s) == "dns" )
			return T;
		}
	return F;
	}

function removal_estimate(c: connection): time
	{
	local state = c$conn?$conn_state ? c$conn$conn_state : "";
	# conn.log leaves duration out when it is 0; so does this.
	local dur = c$conn?$duration ? c$conn$duration : 0sec;
	local proto = get_port_transport_proto(c$id$resp_p);

	if ( proto == tcp )
		{
		# An S0 attempt's timer runs from the first SYN.
		if ( state == "S0" )
			return c$start_time + tcp_attempt_delay;
		if ( state in closed_states )
			return c$start_time + dur + tcp_close_delay;
		if ( long_timeout(c) )
			return c$start_time + dur + long_inactivity_delay;
		return c$start_time + dur + tcp_inactivity_delay;
		}

	if ( proto == udp )
		{
		if ( has_dns(c) )
			return c$start_time + dur + dns_delay;
		return c$start_time + dur + udp_inactivity_delay;
		}

	return c$start_time + dur + icmp_inactivity_delay;
	}

# Whether host h gets a vector in this interval; F once the interval is full.
function admit(b: Bin, h: addr): bool
	{
	if ( h in b$hosts )
		return T;
	if ( |b$hosts| < max_hosts_per_interval )
		{
		b$hosts[h] = HostAgg();
		return T;
		}
	if ( ! b?$overflow )
		b$overflow = hll_cardinality_init(0.01, 0.95);
	hll_cardinality_add(b$overflow, h);
	return F;
	}

function add_connection(b: Bin, c: connection)
	{
	local orig = c$id$orig_h;
	local resp = c$id$resp_h;
	local proto = get_port_transport_proto(c$id$resp_p);
	local state = c$conn?$conn_state ? c$conn$conn_state : "";
	local failed = state in failed_states;
	local dur = c$conn?$duration ? interval_to_double(c$conn$duration) : 0.0;
	# IP-level sizes; Zeek fills them when use_conn_size_analyzer is T.
	local orig_bytes = c$orig?$num_bytes_ip ? c$orig$num_bytes_ip : 0;
	local resp_bytes = c$resp?$num_bytes_ip ? c$resp$num_bytes_ip : 0;
	local orig_pkts = c$orig?$num_pkts ? c$orig$num_pkts : 0;
	local resp_pkts = c$resp?$num_pkts ? c$resp$num_pkts : 0;

	if ( addr_matches_host(orig, track_hosts) && admit(b, orig) )
		{
		local o = b$hosts[orig];
		o$out_conns += 1;
		# Distinct sets stop growing at the cap: both sides report min(n, cap).
		if ( |o$out_hosts| < distinct_cap )
			add o$out_hosts[resp];
		if ( |o$out_ports| < distinct_cap )
			add o$out_ports[c$id$resp_p];
		o$out_bytes += orig_bytes;
		o$out_resp_bytes += resp_bytes;
		o$out_pkts += orig_pkts;
		o$out_resp_pkts += resp_pkts;
		o$out_duration += dur;
		if ( failed )
			o$out_failed += 1;
		if ( state == "REJ" )
			o$out_rejected += 1;
		if ( proto == udp )
			o$out_udp += 1;
		if ( proto == icmp )
			o$out_icmp += 1;
		}

	if ( addr_matches_host(resp, track_hosts) && admit(b, resp) )
		{
		local r = b$hosts[resp];
		r$in_conns += 1;
		if ( |r$in_hosts| < distinct_cap )
			add r$in_hosts[orig];
		r$in_bytes += orig_bytes;
		if ( failed )
			r$in_failed += 1;
		}
	}

function feature_vector(a: HostAgg): vector of double
	{
	# Schema order; index 7 (out_duration) is the one feature that is not a count.
	local counts = vector(a$out_conns, |a$out_hosts|, |a$out_ports|, a$out_bytes,
	    a$out_resp_bytes, a$out_pkts, a$out_resp_pkts, 0, a$out_failed,
	    a$out_rejected, a$out_udp, a$out_icmp, a$in_conns, |a$in_hosts|,
	    a$in_bytes, a$in_failed);
	local v: vector of double = vector();
	for ( i in counts )
		v[i] = count_to_double(counts[i]);
	v[7] = a$out_duration;
	return v;
	}

function log_row(start: time, h: addr, a: HostAgg, late: count, node_: string)
	{
	Log::write(LOG, Info($start=start, $width=interval_width, $host=h,
	    $out_conns=a$out_conns, $out_hosts=|a$out_hosts|,
	    $out_ports=|a$out_ports|, $out_bytes=a$out_bytes,
	    $out_resp_bytes=a$out_resp_bytes, $out_pkts=a$out_pkts,
	    $out_resp_pkts=a$out_resp_pkts, $out_duration=a$out_duration,
	    $out_failed=a$out_failed, $out_rejected=a$out_rejected,
	    $out_udp=a$out_udp, $out_icmp=a$out_icmp, $in_conns=a$in_conns,
	    $in_hosts=|a$in_hosts|, $in_bytes=a$in_bytes,
	    $in_failed=a$in_failed, $late=late, $node=node_));
	}

function publish_chunk(node_: string, start: time, chunk: count, chunks: count,
    late: count, overflow: count, hosts: vector of addr, values: vector of
    vector of double)
	{
	if ( ! export_features )
		return;
@if ( Version::number >= 70200 )
	Cluster::publish(features_topic, SeqWatch::interval_features, node_, start,
	    interval_width, schema_id, chunk, chunks, late, overflow, hosts,
	    values);
@else
	Broker::publish(features_topic, SeqWatch::interval_features, node_, start,
	    interval_width, schema_id, chunk, chunks, late, overflow, hosts,
	    values);
@endif
	}

function emit_bin(idx: count, b: Bin)
	{
	local start = double_to_time(idx * interval_to_double(interval_width));
	local node_ = node_label();
	local per = hosts_per_message > 0 ? hosts_per_message : 1;
	local n = |b$hosts|;
	local chunks = n == 0 ? 1 : ( n + per - 1 ) / per;
	local overflow = 0;

	if ( b?$overflow )
		{
		overflow = double_to_count(hll_cardinality_estimate(b$overflow) + 0.5);
		Reporter::warning(fmt("SeqWatch: interval %s on %s had about %d hosts beyond max_hosts_per_interval=%d; they are counted in the overflow field, not exported",
		    start, node_, overflow, max_hosts_per_interval));
		}

	local hosts: vector of addr = vector();
	local values: vector of vector of double = vector();
	local chunk = 0;

	for ( h, a in b$hosts )
		{
		hosts[|hosts|] = h;
		values[|values|] = feature_vector(a);
		if ( log_features )
			log_row(start, h, a, b$late, node_);
		if ( |hosts| == per )
			{
			publish_chunk(node_, start, chunk, chunks, b$late, overflow, hosts, values);
			++chunk;
			hosts = vector();
			values = vector();
			}
		}

	# The last, partial chunk; an interval without exported hosts still
	# sends one message so its late and overflow counts are seen.
	if ( chunk < chunks )
		publish_chunk(node_, start, chunk, chunks, b$late, overflow, hosts, values);
	}

# Publishes every open interval below index limit, in order.
function emit_before(limit: count)
	{
	local due: vector of count = vector();
	for ( idx in bins )
		{
		if ( idx < limit )
			due[|due|] = idx;
		}
	sort(due);
	for ( i in due )
		{
		emit_bin(due[i], bins[due[i]]);
		delete bins[due[i]];
		}
	if ( limit > first_open_bin )
		first_open_bin = limit;
	}

event check_bins(due: time)
	{
	# Interval b is due once due >= (b+1) * interval_width + slack. The clock
	# is the time this check was scheduled for, not network_time(): when a
	# pcap's time jumps, connection timers that were due earlier still run
	# before later checks, as they would live.
	emit_before(bin_index(due - slack));
	schedule check_interval { check_bins(network_time() + check_interval) };
	}

event connection_state_remove(c: connection)
	{
	if ( ! c?$conn )
		return;

	if ( ! checking )
		{
		checking = T;
		schedule check_interval { check_bins(network_time() + check_interval) };
		}

	local idx = bin_index(removal_estimate(c));
	local late = idx < first_open_bin;
	if ( late )
		idx = first_open_bin;
	if ( idx !in bins )
		bins[idx] = Bin();
	local b = bins[idx];
	if ( late )
		b$late += 1;
	add_connection(b, c);
	}

function flush()
	{
	local last = 0;
	for ( idx in bins )
		{
		if ( idx >= last )
			last = idx + 1;
		}
	emit_before(last);
	}

event zeek_done()
	{
	flush();
	}

event zeek_init()
	{
	Log::create_stream(SeqWatch::LOG, Log::Stream($columns=Info,
	    $path="seqwatch_features", $policy=log_policy));

	# The delays must match this Zeek's timeouts (and the sidecar's config).
	local mismatches: vector of string = vector();
	if ( tcp_attempt_delay != GLOBAL::tcp_attempt_delay )
		mismatches[|mismatches|] = "tcp_attempt_delay";
	if ( tcp_close_delay != GLOBAL::tcp_close_delay
	    || tcp_close_delay != tcp_reset_delay )
		mismatches[|mismatches|] = "tcp_close_delay";
	if ( tcp_inactivity_delay != tcp_inactivity_timeout )
		mismatches[|mismatches|] = "tcp_inactivity_delay";
	if ( dns_delay != dns_session_timeout )
		mismatches[|mismatches|] = "dns_delay";
	if ( udp_inactivity_delay != udp_inactivity_timeout )
		mismatches[|mismatches|] = "udp_inactivity_delay";
	if ( icmp_inactivity_delay != icmp_inactivity_timeout )
		mismatches[|mismatches|] = "icmp_inactivity_delay";
	if ( |mismatches| > 0 )
		Reporter::warning(fmt("SeqWatch: %s differ from this Zeek's connection timeouts; intervals will be off unless the sidecar uses the same delays",
		    join_string_vec(mismatches, ", ")));

	if ( ! Cluster::is_enabled()
	    || Cluster::local_node_type() == Cluster::MANAGER )
		{
@if ( Version::number >= 70200 )
		Cluster::subscribe(verdicts_topic);
@else
		Broker::subscribe(verdicts_topic);
@endif
		}
	}

function finite(x: double): bool
	{
	# NaN and +-inf are the doubles for which x - x is not 0.
	return x - x == 0.0;
	}

function verdict_problem(v: Verdict): string
	{
	if ( ! finite(v$error) || v$error < 0.0 )
		return fmt("error %s is not a finite number >= 0", v$error);
	if ( ! finite(v$threshold) || v$threshold < 0.0 )
		return fmt("threshold %s is not a finite number >= 0", v$threshold);
	if ( v$width <= 0sec )
		return fmt("width %s is not positive", v$width);
	if ( |v$top_features| != |v$top_residuals| )
		return fmt("%d top features but %d residuals", |v$top_features|,
		    |v$top_residuals|);
	for ( i in v$top_residuals )
		{
		if ( ! finite(v$top_residuals[i]) )
			return fmt("residual %d is not finite", i);
		}
	return "";
	}

function explain(v: Verdict): string
	{
	local parts: vector of string = vector();
	for ( i in v$top_features )
		{
		local r = v$top_residuals[i];
		parts[|parts|] = fmt("%s %s%.1fσ", v$top_features[i], r >= 0.0 ? "+" : "", r);
		}
	return join_string_vec(parts, ", ");
	}

event SeqWatch::verdict(v: Verdict)
	{
	local problem = verdict_problem(v);
	if ( problem != "" )
		{
		# Not fatal: one bad message must not stop notices for the rest.
		Reporter::warning(fmt("SeqWatch: ignoring a malformed verdict for %s: %s",
		    v$host, problem));
		return;
		}

	# $n is a count: the error in hundredths, capped far above any real error.
	local capped = v$error < 1e15 ? v$error : 1e15;
	local n = double_to_count(capped * 100.0 + 0.5);
	# The same text as the sidecar's own notice.log (seqwatch.sidecar.notices), so
	# that one parser reads both; fixed-point times never turn into exponents.
	local msg = fmt("error %s > threshold %s over %.6f+%.6fs (model %s)", v$error,
	    v$threshold, time_to_double(v$start), interval_to_double(v$width),
	    v$model_id);
	local top: vector of string = vector();
	for ( i in v$top_features )
		top[i] = fmt("%s=%s%s", v$top_features[i], v$top_residuals[i] >= 0.0 ? "+" : "",
		    v$top_residuals[i]);
	if ( |top| > 0 )
		msg = fmt("%s: %s", msg, join_string_vec(top, " "));

	NOTICE([$note=Traffic_Anomaly, $src=v$host, $msg=msg, $sub=explain(v), $n=n,
	    $identifier=cat(v$host), $suppress_for=notice_suppression]);
	}
